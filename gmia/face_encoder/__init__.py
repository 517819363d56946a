"""The face encoder gmia trains (an IResNet with an ArcFace / CosFace head): embedding, training
on the split's encoder identities, and held-out verification."""
