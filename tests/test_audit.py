"""The audit's verdict in words."""

from gmia.jobs import audit


def test_verdict_wording_follows_the_p_value():
  assert "very likely used" in audit.verdict(1 / 101, 100, 0.9)
  assert "higher than it matches 100 of 100 people" in audit.verdict(1 / 101, 100, 0.9)
  assert "no evidence" in audit.verdict(0.5, 100, 0.3)
