//go:build !race

package t_test

// raceBuild: see race_test.go.
const raceBuild = false
