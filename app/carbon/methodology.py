"""Behaviour → grams CO₂e → points. Pure arithmetic: no database, no Flask."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal


def round_half_up(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def grams(co2e_g_per_unit: Decimal, quantity: Decimal) -> Decimal:
    """Exact grams for a quantity in the rule's unit; rounding happens once, on the total."""
    return Decimal(co2e_g_per_unit) * Decimal(quantity)


def points_for_grams(exact_grams: Decimal, points_per_kg: int) -> int:
    return round_half_up(exact_grams * points_per_kg / 1000)


def exact_points(fixed_per_unit: int | None, exact_grams: Decimal, quantity: Decimal, points_per_kg: int) -> Decimal:
    """Points before rounding: the rule's fixed points per unit where it gives them, else its grams converted at
    points_per_kg. Rounding happens once, on the total."""
    if fixed_per_unit is not None:
        return Decimal(fixed_per_unit) * Decimal(quantity)
    return Decimal(exact_grams) * points_per_kg / 1000


def allocate(total: int, weights: list[Decimal]) -> list[int]:
    """Split an integer total over lines in proportion to weights (largest remainder), summing exactly."""
    if total == 0 or not weights:
        return [0] * len(weights)
    whole = sum(weights)
    if whole == 0:
        return [0] * len(weights)
    shares = [total * w / whole for w in weights]
    floors = [int(s) for s in shares]
    left = total - sum(floors)
    order = sorted(range(len(weights)), key=lambda i: (shares[i] - floors[i], -i), reverse=True)
    for i in order[:left]:
        floors[i] += 1
    return floors


@dataclass(frozen=True)
class CapCharge:
    """Points counted against one daily counter; `limit` None means counted but uncapped."""

    key: str
    amount: int
    limit: int | None
    label: str
