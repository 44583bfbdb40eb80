//go:build tools

// Package tools pins promtool (github.com/prometheus/prometheus cmd/promtool), which checks the
// Prometheus scrape configuration and alert rules under deploy/components/monitoring.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
