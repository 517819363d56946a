"""Over-represented people: 200 members with 3 training photos and 5 with 35, one generator.

  python -m attack.sweep --workdir=runs/sweep_over --config=attack/configs/sweep_overrepresented.py

The seed paper's claim: even in a data set of many people, a person with many photos is at risk.
Each point's exposure.csv ranks every person with a p-value against the 100 non-members, and
exposure.png plots score against photos in training. 17 min on 2 CPU cores: AUC 0.496 for all
members; the five with 35 photos at p = 0.010, 0.059, 0.089, 0.21, 0.87 (README).
"""

import ml_collections

from attack.configs import sweep


def get_config() -> ml_collections.ConfigDict:
  config = sweep.get_config()
  config.grid.update(members=(205,), photos=(3,), overrepresented=5, overrepresented_photos=-1)
  return config
