"""Generators of the models the project authors itself (robot, gripper CAD model, objects).

Run through ``scripts/generate_assets.py``; the outputs are committed under ``assets/`` so the
simulator loads everything offline.
"""
