"""vlmrl: embodied reinforcement learning with rewards from vision-language models.

Data flows one way: env -> frames -> labeler -> labels -> reward net -> agent.
"""

from vlmrl.headless import configure_headless

configure_headless()

__version__ = "0.1.0"
