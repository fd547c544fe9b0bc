"""Where eyes and agents attend: visual-search and scanpath models (eccNET, IVSN, OAT), foveated localisation,
transformer brain encoders and TrackVLA++'s polar tokens.

One module per concept; import the module you need. This package imports nothing heavy itself.
"""
