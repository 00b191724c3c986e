"""Datasets and pointmaps for the learning side (never imports pydrake).

Submodules: :mod:`.geometry` (pointmaps, frames, projection, normalisation, depth codec),
:mod:`.masks` (gripper part bit layout), :mod:`.format` (on-disk dataset format),
:mod:`.verify` (integrity checks), :mod:`.datasets` (torch loaders), :mod:`.actions` (policy
action vectors) and :mod:`.synthetic` (analytic synthetic episodes). Import them directly; this
package imports nothing, so ``geo4d_policy.data.geometry`` stays cheap to import.
"""
