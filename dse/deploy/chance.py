"""The near-chance rule: a model scoring about as well as guessing did not learn; refuse it, or label it."""

from __future__ import annotations

from dse.common import chance_percent, near_chance
from dse.deploy import DeployError

#: A model at most this many points above chance (100 / classes %) is refused unless --force: it did not learn,
#: and a deployment of it would only look like a result.
CHANCE_MARGIN_POINTS = 10.0


def refuse_near_chance(label: str, acc: float, num_classes: int, force: bool) -> None:
    """DeployError when ``acc`` (percent) is within CHANCE_MARGIN_POINTS of guessing, unless ``force``."""
    chance = chance_percent(num_classes)
    if not force and near_chance(acc, num_classes, CHANCE_MARGIN_POINTS):
        raise DeployError(f"refusing to deploy {label}: test accuracy {acc:.1f} % is within "
                          f"{CHANCE_MARGIN_POINTS:g} points of chance ({chance:g} % for {num_classes} classes); "
                          "train it longer, or pass --force to deploy it anyway")


def chance_warning(acc: float, num_classes: int) -> str:
    """The model card's warning for a model (``acc`` in percent) deployed near chance with --force; '' if none."""
    if not near_chance(acc, num_classes, CHANCE_MARGIN_POINTS):
        return ""
    return (f"test accuracy {acc:.1f} % is within {CHANCE_MARGIN_POINTS:g} points of chance "
            f"({chance_percent(num_classes):g} %): this model did not learn and was deployed with --force")


__all__ = ["CHANCE_MARGIN_POINTS", "chance_warning", "refuse_near_chance"]
