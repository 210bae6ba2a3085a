"""Templates of generated files. ``rtmaps_classifier.py`` is read as text by ``dse.deploy.rtmaps``, never
imported by dse (it imports RTMaps' own ``rtmaps`` modules, which exist only inside RTMaps)."""
