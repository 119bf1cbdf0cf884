"""Tests of spindle.policies."""
