package j1msky

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Sign is the request signature the daemon checks (j1mskyd/signing.py):
// hex(HMAC-SHA256(secret, timestamp + "\n" + METHOD + "\n" + path + "\n" + body)), where
// timestamp is the X-Timestamp header as sent, path starts with /api (query string
// included or not) and body is the raw body ("" for none).
func Sign(secret, timestamp, method, path, body string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(timestamp + "\n" + strings.ToUpper(method) + "\n" + path + "\n" + body))
	return hex.EncodeToString(mac.Sum(nil))
}
