package command

import (
	"net/netip"
	"strconv"
	"strings"
)

// The XCLIENT values that say the attribute is not known.
const (
	xclientUnavailable = "[UNAVAILABLE]"
	xclientTempUnavail = "[TEMPUNAVAIL]"
)

// XClient is what an XCLIENT command (Postfix's XCLIENT_README) sets,
// built attribute by attribute before any of it applies: a bad attribute
// changes nothing. Start from the connection's address and name.
type XClient struct {
	Remote     netip.AddrPort
	Name, Helo string
	Login      string
	ESMTP      bool
}

// Set applies one attribute=value (NAME, ADDR, PORT, PROTO, HELO or
// LOGIN, the value in xtext); a refusal is a 501 *Error.
func (x *XClient) Set(field string) error {
	name, raw, ok := strings.Cut(field, "=")
	if !ok || name == "" {
		return addrParamErr("Bad XCLIENT attribute syntax: " + field)
	}
	name = Upper(name)
	v, ok := addrXtext(raw, true)
	if !ok {
		return addrParamErr("Bad XCLIENT " + name + " value: want xtext")
	}
	unknown := v == xclientUnavailable || v == xclientTempUnavail
	switch name {
	case "ADDR":
		if unknown {
			return nil // the address stays as it was
		}
		ip, err := netip.ParseAddr(strings.TrimPrefix(strings.TrimPrefix(v, "IPV6:"), "ipv6:"))
		if err != nil || ip.Zone() != "" {
			return addrParamErr("Bad XCLIENT ADDR: want an IPv4 address or IPV6:address")
		}
		x.Remote = netip.AddrPortFrom(ip.Unmap(), x.Remote.Port())
	case "PORT":
		if unknown {
			return nil
		}
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			return addrParamErr("Bad XCLIENT PORT: want a number from 0 to 65535")
		}
		x.Remote = netip.AddrPortFrom(x.Remote.Addr(), uint16(p))
	case "NAME":
		if unknown {
			x.Name = ""
		} else {
			x.Name = v
		}
	case "HELO":
		if unknown {
			x.Helo = ""
		} else if h, ok := HeloName(v); ok {
			x.Helo = h
		} else {
			return addrParamErr("Bad XCLIENT HELO value")
		}
	case "LOGIN":
		if !unknown {
			x.Login = v
		}
	case "PROTO":
		switch Upper(v) {
		case "SMTP":
			x.ESMTP = false
		case "ESMTP":
			x.ESMTP = true
		default:
			if !unknown {
				return addrParamErr("Bad XCLIENT PROTO: want SMTP or ESMTP")
			}
		}
	default:
		return addrParamErr("Bad XCLIENT attribute name: " + name)
	}
	return nil
}
