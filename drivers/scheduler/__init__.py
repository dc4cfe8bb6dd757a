"""Scheduler drivers: where new work goes, behind ``SchedulerDriver``."""
