"""The building blocks of every sweep-file model: the frozen base and the number types.

Every model is frozen and rejects unknown keys; ``Int`` and ``Float`` refuse booleans (YAML's
``true`` is not 1 here) and ``Float`` refuses nan and inf; ``Seed`` is a seed torch and numpy
both take.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

# every model, the sweep-axis ones too: nan / inf in any float key is refused, naming the key
CONFIG = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Frozen(BaseModel):
    model_config = CONFIG


def _no_bool(kind: str) -> BeforeValidator:
    """Pydantic's lax mode reads YAML ``true`` as 1: a boolean is never a number here."""

    def check(v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"Input should be a valid {kind}, not true/false")
        return v

    return BeforeValidator(check)


MAX_SEED = 2**32 - 1  # what torch's manual_seed and numpy's seeding both take


def _seed_range(v: int) -> int:
    if not 0 <= v <= MAX_SEED:
        raise ValueError(f"a seed must be in [0, {MAX_SEED}] (2**32 - 1)")
    return v


# The number types of every model: Int and Float refuse booleans; Float refuses nan and inf
# by itself (also inside maps and lists, whatever the model's config). A seed goes to
# torch.Generator.manual_seed (split, data order, mixing, probes) and torch.manual_seed.
Int = Annotated[int, _no_bool("integer")]
Float = Annotated[float, _no_bool("number"), Field(allow_inf_nan=False)]
Seed = Annotated[Int, AfterValidator(_seed_range)]


# one line of text: no newlines or control characters (tabs are checked by the caller)
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
