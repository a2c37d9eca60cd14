"""vlmrl: embodied reinforcement learning with rewards from vision-language models.

Data flows one way: env -> frames -> labeler -> labels -> reward net -> agent.
"""

import contextlib

from vlmrl.headless import configure_headless

configure_headless()

# d3rlpy 2.8 depends on the legacy `gym` package; stable-baselines3 imports it when present and
# it then prints a multi-line "Gym has been unmaintained" notice on every run. vlmrl never uses
# `gym` (only Gymnasium), so drop that notice before anything imports gym.
with contextlib.suppress(ImportError):
    import gym_notices.notices

    gym_notices.notices.notices.clear()

__version__ = "0.1.0"
