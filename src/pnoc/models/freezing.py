"""Fixed early stages of a backbone (``frozen_stages``), the way IRN and mmsegmentation do it.

Stage 0 is the stem (the layers before the first block: a ResNet's ``conv1``/``bn1``, the deep
stem of a ResNeSt, EfficientNet's ``conv_stem``/``bn1``), stage 1 the rest up to the stride-4
feature (a ResNet's ``layer1``, EfficientNet-Lite0's blocks up to stride 4). ``frozen_stages = n``
keeps stages ``0 .. n-1`` fixed: their parameters do not require gradients and their BatchNorms
stay in eval mode (running statistics neither used from the batch nor updated), whatever
``train()`` is called with. Gradients still flow *through* them to an input that requires
gradients (P-NOC's noc passes the generator's gradient to the erased image), but with an input
that does not, autograd records nothing for them: no backward pass runs through the stem and the
first stage, which is where most of a small-image step's memory traffic is.

Frozen stages make sense with pretrained weights (ImageNet features of the first stages are
generic); from a random initialisation they stay random.
"""

from __future__ import annotations

from torch import nn

from pnoc.errors import ConfigError

FROZEN_STAGES = (0, 1, 2)


class StageFreezing(nn.Module):
    """Mixin for backbones: implement :meth:`stage_modules`; call :meth:`freeze_stages`."""

    frozen_stages: int = 0

    def stage_modules(self, n: int) -> list[nn.Module]:
        """The modules of stages ``0 .. n-1`` (stem first)."""
        raise NotImplementedError

    def freeze_stages(self, n: int) -> StageFreezing:
        """Keep stages ``0 .. n-1`` fixed (``n`` in 0, 1, 2); earlier freezing is undone first."""
        if n not in FROZEN_STAGES:
            raise ConfigError(f"frozen_stages: expected one of {FROZEN_STAGES}, got {n!r}")
        for module in self.stage_modules(self.frozen_stages):
            module.requires_grad_(True)
        self.frozen_stages = n
        for module in self.stage_modules(n):
            module.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> StageFreezing:
        super().train(mode)
        for module in self.stage_modules(self.frozen_stages):
            module.train(False)
        return self
