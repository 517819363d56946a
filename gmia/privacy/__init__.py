"""Person-level differential privacy: training with it, stating it, and checking it.

  sampling    Poisson sampling of people (not photos) for each step, padded to a fixed shape
  clipping    each person's gradient clipped to a norm, summed, and Gaussian noise added
  accounting  epsilon of the composed steps (dp-accounting), noise calibrated to a target
  auditing    empirical lower bounds on epsilon from an attack's scores on canaries
  runs        what a DP trainer needs around its step: the run's plan, its batches of people

The unit of privacy is a person: adding or removing one identity with all of their photos
changes what a DP-trained model releases by at most the stated (epsilon, delta).
"""
