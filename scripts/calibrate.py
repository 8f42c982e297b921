"""``hf-reward calibrate`` as a script: see ``hf_reward.cli.calibrate``."""

from hf_reward.cli import run_script
from hf_reward.cli.calibrate import main

if __name__ == "__main__":
    run_script(main)
