"""``hf-reward adapt`` as a script: see ``hf_reward.experiments.adapt_command``."""

from hf_reward.cli import run_script
from hf_reward.experiments.adapt_command import main

if __name__ == "__main__":
    run_script(main)
