"""Over-represented people: 200 members with 3 training photos and 20 with 35, one generator.

  python -m attack.sweep --workdir=runs/sweep_over --config=attack/configs/sweep_overrepresented.py

The seed paper's claim: even in a data set of many people, a person with many photos is at risk.
Each point's exposure.csv ranks every person with a p-value against the 100 non-members, and
exposure.png plots score against photos in training; the attack's scores.csv adds each person's
person-level test of their photos (p_value_set). With 20 over-represented people the count of them
below p = 0.05 has the power to tell 20 x 0.05 = 1 expected by chance from most of them.
"""

import ml_collections

from attack.configs import sweep


def get_config() -> ml_collections.ConfigDict:
  config = sweep.get_config()
  config.grid.update(members=(220,), photos=(3,), overrepresented=20, overrepresented_photos=-1)
  return config
