"""The benchmark behind `make bench` (manage.py bench): seeding, scenarios and the report."""
