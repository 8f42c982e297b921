"""``hf-reward study`` as a script: see ``hf_reward.experiments.study_command``."""

from hf_reward.cli import run_script
from hf_reward.experiments.study_command import main

if __name__ == "__main__":
    run_script(main)
