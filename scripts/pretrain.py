"""``hf-reward pretrain`` as a script: see ``hf_reward.cli.pretrain``."""

from hf_reward.cli import run_script
from hf_reward.cli.pretrain import main

if __name__ == "__main__":
    run_script(main)
