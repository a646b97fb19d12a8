//go:build !linux

package transaction

const oTmpfile = 0
