"""Audit p-values and wording."""

import numpy as np
import pytest

from gmia.attacks import audit


def test_empirical_p_value():
  population = np.array([0.1, 0.2, 0.3, 0.4])
  assert audit.empirical_p_value(0.5, population) == pytest.approx(1 / 5)
  assert audit.empirical_p_value(0.3, population) == pytest.approx(3 / 5)
  assert audit.empirical_p_value(0.0, population) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="population"):
    audit.empirical_p_value(0.5, np.array([]))


def test_verdict_wording_follows_the_p_value():
  assert "very likely used" in audit.verdict(1 / 101, 100, 0.9)
  assert "higher than it matches 100 of 100 people" in audit.verdict(1 / 101, 100, 0.9)
  assert "no evidence" in audit.verdict(0.5, 100, 0.3)
