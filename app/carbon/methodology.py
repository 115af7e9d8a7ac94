"""Behaviour → grams CO₂e → points. Pure arithmetic: no database, no Flask."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Protocol


def round_half_up(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def grams(co2e_g_per_unit: Decimal, quantity: Decimal) -> Decimal:
    """Exact grams for a quantity in the rule's unit; rounding happens once, on the total."""
    return Decimal(co2e_g_per_unit) * Decimal(quantity)


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


class Priceable(Protocol):
    co2e_g_per_unit: Decimal
    points: int | None  # fixed points per unit, or None: the grams converted


@dataclass(frozen=True)
class Priced:
    """An activity's points and grams, each rounded once on the whole, and each line's share of them."""

    points: int
    co2e_g: int
    line_points: list[int]
    line_grams: list[int]


def price(lines: Sequence[tuple[Priceable, Decimal]], points_per_kg: int) -> Priced:
    """Lines of (rule, quantity in the rule's unit): exact grams and points per line, rounded once on the total, then
    shared out over the lines so that they add up to it."""
    exact_g = [grams(rule.co2e_g_per_unit, quantity) for rule, quantity in lines]
    exact_pts = [exact_points(rule.points, g, q, points_per_kg) for (rule, q), g in zip(lines, exact_g, strict=True)]
    points, co2e_g = round_half_up(sum(exact_pts, Decimal(0))), round_half_up(sum(exact_g, Decimal(0)))
    return Priced(points, co2e_g, allocate(points, exact_pts), allocate(co2e_g, exact_g))


@dataclass(frozen=True)
class CapCharge:
    """Points counted against one daily counter; `limit` None means counted but uncapped."""

    key: str
    amount: int
    limit: int | None
    label: str
