"""Packaged offline demo data (see README.md); built by build_demo_data.py."""
