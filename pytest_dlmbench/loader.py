"""One model in memory at a time: built or loaded on first use, freed when another is asked for.

Loading is never timed; freeing returns the device to its memory baseline before the next
model is built, so peaks of one model never include another's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_dlmbench.device import release
from pytest_dlmbench.models import ModelSpec, build_model, get_spec, load_checkpoint

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from pytest_dlmbench.core import Settings


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    model: PreTrainedModel
    weights: str  # "random" or "checkpoint"
    checkpoint: str | None = None

    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer (random-weight models have none)."""
        from transformers import AutoTokenizer

        if self.checkpoint is None:
            raise ValueError(f"{self.spec.name} has random weights and no tokenizer; pass --dlm-checkpoint")
        return AutoTokenizer.from_pretrained(self.checkpoint, local_files_only=True)


class ModelCache:
    """The `dlm_model` fixture: ``dlm_model.get(name)`` returns the loaded model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.current: LoadedModel | None = None
        self._used: set[str] = set()

    def first_use(self, name: str) -> bool:
        """True the first time it is asked about `name` in this session."""
        first = name not in self._used
        self._used.add(name)
        return first

    def get(self, name: str) -> LoadedModel:
        if self.current is not None and self.current.spec.name == name:
            return self.current
        self.release()
        spec = get_spec(name)
        settings = self.settings
        checkpoint = settings.checkpoint(name)
        if checkpoint is None:
            model = build_model(spec, settings.torch_device, settings.torch_dtype, seed=settings.seed)
            self.current = LoadedModel(spec, model, "random")
        else:
            model = load_checkpoint(spec, checkpoint, settings.torch_device, settings.torch_dtype)
            self.current = LoadedModel(spec, model, "checkpoint", checkpoint)
        return self.current

    def release(self) -> None:
        """Drop the current model and give its device memory back."""
        self.current = None
        release(self.settings.torch_device)
