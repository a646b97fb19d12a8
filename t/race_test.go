//go:build race

package t_test

// raceBuild: this test binary runs under the race detector, and so does
// the smtpd it builds (make test's second run), so that the end-to-end
// tests race-check the real server too.
const raceBuild = true
