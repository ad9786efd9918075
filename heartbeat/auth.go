package heartbeat

import "strings"

// BearerToken takes the token of an "Authorization: Bearer TOKEN" header;
// the scheme is case-insensitive (RFC 7235 §2.1). ok is false when there
// is none.
func BearerToken(header string) (token string, ok bool) {
	const scheme = "bearer "
	if len(header) <= len(scheme) || !strings.EqualFold(header[:len(scheme)], scheme) {
		return "", false
	}
	return header[len(scheme):], true
}
