"""Shared code of the bone-age study: the notebooks tell the story, these modules do the work."""
