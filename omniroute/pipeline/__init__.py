"""The request pipeline: one data path for every operation, with stages around it.

See :mod:`omniroute.pipeline.serve` for the path itself, :mod:`.operation`
for what an operation implements and :mod:`.stages` for the stage list.
"""

from omniroute.pipeline.audio import Speak, Transcribe, Translate
from omniroute.pipeline.chat import Chat
from omniroute.pipeline.context import Reply, RequestContext
from omniroute.pipeline.count import CountTokens
from omniroute.pipeline.embed import Embed
from omniroute.pipeline.images import Images
from omniroute.pipeline.operation import Operation
from omniroute.pipeline.serve import Pipeline
from omniroute.pipeline.stages import Stage, StageRun, default_stages

__all__ = ["Chat", "CountTokens", "Embed", "Images", "Operation", "Pipeline", "Reply",
           "RequestContext", "Speak", "Stage", "StageRun", "Transcribe", "Translate",
           "default_stages"]
