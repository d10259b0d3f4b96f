"""Typed option blocks of the networks: one frozen dataclass per block of a model YAML (``encoder``, ``field``, …).

LightningCLI reads the dataclasses from the LightningModules' signatures, so ``lift3d fit --help`` and
``--print_config`` list every option with its type and default, a misspelt option fails when the config is parsed,
and ``--model.init_args.transformer.grad_checkpointing=false`` arrives as ``False``. A network builds each block from
its config in one way, :meth:`BlockConfig.build`, handing over what it derives from the other blocks (widths, the
scene bound); those derived arguments are not options.

The block's ``__init__`` stays the one home of the defaults: a config field's default is read from it
(:func:`default_of`), so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, Optional, TypeVar, cast

from torch import nn

B = TypeVar("B", bound=nn.Module)
Options = Optional[Mapping[str, Any]]  # a block as plain data (a checkpoint's hparams, a test's dict); None: defaults
C = TypeVar("C", bound="BlockConfig")


def default_of(block: type, option: str) -> Any:
    """The default of ``option`` in ``block.__init__`` (a config field's default)."""
    param = inspect.signature(block).parameters[option]
    if param.default is inspect.Parameter.empty:
        raise TypeError(f"{block.__name__}.__init__ has no default for {option!r}: give it one, or make it derived")
    return param.default


@dataclasses.dataclass(frozen=True)
class BlockConfig(Generic[B]):
    """Base of the block configs. Subclasses set ``block`` (the ``nn.Module`` the config builds), ``derived`` (its
    arguments the network computes from other blocks) and ``extra`` (fields the network reads itself, not passed to
    the block)."""

    block: ClassVar[type[nn.Module]]
    derived: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[tuple[str, ...]] = ()

    def options(self) -> dict[str, Any]:
        """The block's keyword arguments from this config (``extra`` fields left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.extra}

    def build(self, **derived: Any) -> B:
        """The block, from these options and the ``derived`` arguments the network computed."""
        return cast(B, self.block(**self.options(), **derived))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) as a YAML or a checkpoint's hparams hold it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def of(cls: type[C], value: Any, name: str, model: str) -> C:
        """``value`` as this config: itself, the defaults for ``None``, or a mapping (the hparams of a checkpoint saved
        before the blocks were typed, a test's dict) checked as strictly as LightningCLI checks a YAML."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"model config block {name!r}: expected a mapping of {cls.block.__name__} options or a "
                            f"{cls.__name__}, got {type(value).__name__} {value!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        derived = sorted(set(value) & set(cls.derived))
        if derived:
            raise TypeError(f"model config block {name!r} sets {derived}, which the {model} model derives from the "
                            f"other blocks; remove them from the config")
        unknown = sorted(set(value) - fields)
        if unknown:
            raise TypeError(f"model config block {name!r} has options {cls.block.__name__} does not take: {unknown}; "
                            f"its options are {sorted(fields)}")
        hints = typing.get_type_hints(cls)
        for key, val in value.items():  # a string 'false' would be truthy
            if bool in (typing.get_args(hints[key]) or (hints[key],)) and val is not None and not isinstance(val, bool):
                raise TypeError(f"model config block {name!r}: {key} must be true or false, got {val!r}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


def missing_options(config: type[BlockConfig]) -> list[str]:
    """The block's ``__init__`` arguments that are neither fields nor derived (empty when the config is complete)."""
    params = set(inspect.signature(config.block).parameters)
    covered = {f.name for f in dataclasses.fields(config)} | set(config.derived)
    return sorted(params - covered)



def plain_block(value: Any) -> Any:
    """A block as plain data, as a checkpoint's hparams keep it (``torch.load(weights_only=True)``, which LightningCLI
    uses on ``--ckpt_path``, reads no dataclasses); anything else unchanged."""
    return value.to_dict() if isinstance(value, BlockConfig) else value
