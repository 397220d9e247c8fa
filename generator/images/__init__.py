"""Images cupaas builds itself: the runtimes' base images, from Debian packages through a Debian mirror."""
