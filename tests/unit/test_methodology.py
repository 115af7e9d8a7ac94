from decimal import Decimal
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from app.carbon.methodology import allocate, exact_points, price, round_half_up


def test_round_half_up_not_bankers():
    assert round_half_up(Decimal("2.5")) == 3
    assert round_half_up(Decimal("3.5")) == 4
    assert round_half_up(Decimal("2.4999")) == 2


def converted(co2e_g_per_kg: int) -> SimpleNamespace:
    return SimpleNamespace(co2e_g_per_unit=Decimal(co2e_g_per_kg), points=None)


def test_points_rounded_once_on_the_whole_deposit():
    paper, metal = converted(1760), converted(1370)
    # Per line: 52.8 g → 0.528 pt → 1, 41.1 g → 0.411 pt → 0; on the whole: 93.9 g → 0.939 → 1.
    assert [price([(rule, Decimal("0.03"))], 10).points for rule in (paper, metal)] == [1, 0]
    both = price([(paper, Decimal("0.03")), (metal, Decimal("0.03"))], 10)
    assert (both.points, both.co2e_g, both.line_points, both.line_grams) == (1, 94, [1, 0], [53, 41])
    three = price([(paper, Decimal("0.03"))] * 3, 10)
    assert (three.points, three.line_points) == (2, [1, 1, 0])  # 158.4 g → 1.584 → 2, not 3 lines of 1


def test_fixed_points_and_converted_grams_share_one_rounding():
    fixed = SimpleNamespace(co2e_g_per_unit=Decimal(2200), points=20)  # 20 points a kg
    mixed = price([(fixed, Decimal("0.025")), (converted(1000), Decimal("0.01"))], 10)
    assert (mixed.points, mixed.co2e_g) == (1, 65)  # 0.5 + 0.1 points → 1; 55 + 10 g


def test_rate_is_configurable():
    assert price([(converted(1000), Decimal(1))], 10).points == 10
    assert price([(converted(1000), Decimal(1))], 25).points == 25


@given(
    st.integers(min_value=0, max_value=10_000),
    st.lists(st.decimals(min_value=0, max_value=10_000, places=3), min_size=1, max_size=20),
)
def test_allocate_sums_exactly_and_is_fair(total, weights):
    shares = allocate(total, weights)
    assert len(shares) == len(weights)
    if sum(weights) == 0:
        assert shares == [0] * len(weights)
        return
    assert sum(shares) == total
    whole = sum(weights)
    for share, weight in zip(shares, weights, strict=True):
        assert abs(share - total * weight / whole) < 1


def test_exact_points_prefers_the_rules_fixed_points_per_unit():
    assert exact_points(20, Decimal("2200"), Decimal("1.25"), 10) == 25  # 20 a kg × 1.25 kg; the grams are ignored
    assert exact_points(0, Decimal("2200"), Decimal("1.25"), 10) == 0  # fixed at nothing means nothing
    assert exact_points(None, Decimal("1000.1"), Decimal("0.73"), 10) == Decimal("10.001")  # grams converted


def test_exact_points_convert_grams_at_the_rate_given():
    # POINTS_PER_KG_CO2E is configurable (1 to 1000): 1000 g at 25 points a kg is 25 points, at 1 a kg 1 point.
    assert exact_points(None, Decimal(1000), Decimal(1), 25) == 25
    assert exact_points(None, Decimal(1760), Decimal(1), 1) == Decimal("1.76")


def test_allocate_gives_a_tied_spare_unit_to_the_earlier_line():
    # 5 over 2.6 : 2.6 → shares 2.5 and 2.5, floors 2 and 2; the spare unit goes to the first line, so a deposit's
    # lines (and the category caps they charge) do not depend on anything but their order.
    assert allocate(5, [Decimal("2.6"), Decimal("2.6")]) == [3, 2]
    assert allocate(1, [Decimal(1), Decimal(1), Decimal(1)]) == [1, 0, 0]


def test_the_spare_points_go_to_the_largest_remainders_not_the_largest_lines():
    """A deposit's lines share its rounded points by largest remainder: 1.4 and 0.6 of 2 are 1 and 1, not 2 and 0
    (the property test's |share - exact| < 1 holds for either), or a category's cap is charged the wrong points."""
    assert allocate(2, [Decimal("1.4"), Decimal("0.6")]) == [1, 1]
    assert allocate(10, [Decimal("7.2"), Decimal("1.4"), Decimal("1.4")]) == [7, 2, 1]
