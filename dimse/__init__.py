"""DIMSE services (PS3.4, PS3.7) on pynetdicom, and the one thread<->event-loop bridge."""
