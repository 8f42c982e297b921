"""``hf-reward evaluate`` as a script: see ``hf_reward.cli.evaluate``."""

from hf_reward.cli import run_script
from hf_reward.cli.evaluate import main

if __name__ == "__main__":
    run_script(main)
