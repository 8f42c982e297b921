"""``hf-reward tune`` as a script: see ``hf_reward.cli.tune``."""

from hf_reward.cli import run_script
from hf_reward.cli.tune import main

if __name__ == "__main__":
    run_script(main)
