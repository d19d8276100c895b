package config

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// nixSecretSettings are the nix settings whose values are credentials.
var nixSecretSettings = []string{"access-tokens", "extra-access-tokens"}

// takeNixSecrets takes the settings of nixSecretSettings out of nix's
// command-line flags, in each form nix reads them: "--option NAME VALUE"
// and "--NAME VALUE" (and "--NAME=VALUE", which nix itself would refuse
// but which holds the token all the same). It returns the other flags and
// the settings taken, in order. Its errors never quote a value.
func takeNixSecrets(words []string) (kept []string, taken []NixSetting, err error) {
	for i := 0; i < len(words); i++ {
		w := words[i]
		name, value, n := "", "", 0 // n: how many words the setting spans
		switch {
		case w == "--option" && i+1 < len(words) && slices.Contains(nixSecretSettings, words[i+1]):
			name, n = words[i+1], 3
		case w == "--option":
			// Another setting: keep it and its value as they are, so the
			// value is never read as a flag.
			end := min(i+3, len(words))
			kept = append(kept, words[i:end]...)
			i = end - 1
			continue
		case strings.HasPrefix(w, "--") && slices.Contains(nixSecretSettings, w[2:]):
			name, n = w[2:], 2
		default:
			if flag, v, ok := strings.Cut(w, "="); ok && strings.HasPrefix(flag, "--") && slices.Contains(nixSecretSettings, flag[2:]) {
				name, value, n = flag[2:], v, 1
			}
		}
		if n == 0 {
			kept = append(kept, w)
			continue
		}
		if n > 1 {
			if i+n-1 >= len(words) {
				return nil, nil, fmt.Errorf("%s needs a value", strings.Join(words[i:], " "))
			}
			value = words[i+n-1]
		}
		if err := nixConfSafe(value); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
		taken = append(taken, NixSetting{Name: name, Value: Secret(value)})
		i += n - 1
	}
	return kept, taken, nil
}

// nixConfSafe checks that a secret setting can be written on one line of
// nix.conf and mean what it says there. The error never quotes it.
func nixConfSafe(value string) error {
	switch {
	case strings.TrimSpace(value) == "":
		return errors.New("want space-separated host=token pairs, got nothing")
	case hasControl(value):
		return errors.New("the value has a control character (not shown)")
	case strings.Contains(value, "#"):
		return errors.New("the value has a '#', which nix.conf reads as the start of a comment (not shown)")
	}
	return nil
}

// splitWords splits s into words the way a POSIX shell would, without any
// expansion: blanks separate words, '...' is literal, "..." is literal but
// for \\, \", \$, \` and backslash-newline, and a backslash outside quotes
// takes the next character literally. Its errors never quote s.
func splitWords(s string) ([]string, error) {
	var (
		words  []string
		word   strings.Builder
		inWord bool // also true for an empty quoted word ("")
	)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\r':
			if inWord {
				words = append(words, word.String())
				word.Reset()
				inWord = false
			}
		case '\\':
			i++
			if i == len(s) {
				return nil, errors.New("ends with a lone backslash")
			}
			if s[i] != '\n' { // backslash-newline joins lines
				word.WriteByte(s[i])
				inWord = true
			}
		case '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, errors.New("unterminated single quote")
			}
			word.WriteString(s[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case '"':
			inWord = true
			for i++; ; i++ {
				if i == len(s) {
					return nil, errors.New("unterminated double quote")
				}
				if s[i] == '"' {
					break
				}
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\\\"$`\n", s[i+1]) >= 0 {
					i++
					if s[i] == '\n' {
						continue
					}
				}
				word.WriteByte(s[i])
			}
		default:
			word.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, word.String())
	}
	return words, nil
}
