"""The audit's verdict in words: every band and its boundaries, and what a small population cannot
say."""

import pytest

from gmia.jobs import audit


@pytest.mark.parametrize("p_value,words", [
    (0.0099, "very likely used"), (0.01, "very likely used"), (0.0101, "Your face: likely used"),
    (0.05, "Your face: likely used"), (0.0501, "possibly used"), (0.2, "possibly used"),
    (0.2001, "no evidence"), (1.0, "no evidence")])
def test_every_band_and_its_boundary(p_value, words):
  assert words in audit.verdict(p_value, 1000, 0.5)


def test_the_verdict_counts_the_people_beaten():
  assert "higher than it matches 100 of 100 people" in audit.verdict(1 / 101, 100, 0.9)
  assert "higher than it matches 0 of 100 people" in audit.verdict(1.0, 100, 0.1)


def test_a_small_population_says_what_it_cannot_show():
  """Against 3 people no result can go below p = 0.25: the verdict says so."""
  text = audit.verdict(0.5, 3, 0.3)
  assert "no result could have gone below p = 0.25" in text and "no evidence" in text
  assert audit.min_p_value(3) == 0.25
  assert "no result could have gone" not in audit.verdict(1 / 1001, 1000, 0.9)
