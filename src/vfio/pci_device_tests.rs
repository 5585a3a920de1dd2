//! Tests for the VFIO PCI device model.
