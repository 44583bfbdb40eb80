"""Executors: how the upgrade step changes the host (kubeadm procedure, or a user's script)."""
