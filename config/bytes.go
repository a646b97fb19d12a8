package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Bytes is a byte count written in the config as an integer or as a string
// with a unit: "512KB", "10MB", "1GB" (powers of 1024; "KiB", "MiB", "GiB"
// and "K", "M", "G" mean the same, "B" or no unit means bytes).
type Bytes int64

// UnmarshalText parses the setting; the TOML decoder gives an integer to
// it as its decimal text.
func (b *Bytes) UnmarshalText(text []byte) error {
	n, err := parseBytes(string(text))
	if err != nil {
		return fmt.Errorf("%q: %w", string(text), err)
	}
	*b = Bytes(n)
	return nil
}

var units = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
}

// parseBytes parses "10MB", "10 MiB", "512k" or "1048576" into bytes.
func parseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	bad := fmt.Errorf("want a whole number of bytes (10485760) or a number with a unit: \"10MB\" (KB, MB, GB are powers of 1024)")
	if i == 0 {
		return 0, bad
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, bad
	}
	mult, ok := units[strings.ToLower(strings.TrimSpace(t[i:]))]
	if !ok {
		return 0, bad
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("too large")
	}
	return n * mult, nil
}
