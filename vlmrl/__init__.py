"""vlmrl: embodied reinforcement learning with rewards from vision-language models.

Data flows one way: env -> frames -> labeler -> labels -> reward net -> agent.

Importing ``vlmrl`` sets headless rendering defaults and registers the ``vlmrl/...``
Gymnasium ids (as ``import ale_py`` does for ALE), so ``gym.make("vlmrl/CartPole-v1")`` works
after it. The env modules themselves (pygame, MuJoCo) load only when an env is made.
"""

import contextlib

from vlmrl.headless import configure_headless

__version__ = "0.1.0"

configure_headless()

# d3rlpy 2.8 depends on the legacy `gym` package; stable-baselines3 imports it when present and
# it then prints a multi-line "Gym has been unmaintained" notice on every run. vlmrl never uses
# `gym` (only Gymnasium), so drop that notice before anything imports gym.
with contextlib.suppress(ImportError):
    import gym_notices.notices

    gym_notices.notices.notices.clear()

# Registration costs one Gymnasium import (~0.1 s, no torch); entry points are strings.
import vlmrl.envs  # noqa: E402,F401
