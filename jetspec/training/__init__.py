"""The training layer: the recipe of the learned heads (recipe), token data (data), callbacks, regeneration.

It imports the core and Lightning; the modules are imported by their own names
(``from jetspec.training.recipe import TrainConfig``), so importing one does not import the others.
"""
