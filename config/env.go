package config

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v10"

	"github.com/flakeship/flakeship/forge"
)

// The tags of globalEnv and targetEnv are the one list of variable names:
// Load reads them through env, names them in errors, and rejects FLAKESHIP_*
// names that none of them declares. env converts each value to its field's
// type (the types in values.go check their own values), applies envDefault,
// and refuses an empty notEmpty variable. An empty value counts as unset
// (and gets the default). Tags of flakeship's own describe a field for its
// errors and bounds:
//
//   - want: what the value must be, for every problem of the field:
//     "want <want>, got <value>" (without it, the type's own error is the
//     problem);
//   - help: what a missing notEmpty variable is, "required: <help>" (want
//     when unset);
//   - min, max: bounds of a number or duration, checked after conversion.
//
// What env cannot express (defaults that depend on other settings, a secret
// in either of two variables, checks across settings) is in load.go.

// globalEnv holds the global variables in the order they are checked.
type globalEnv struct {
	Listen          listenAddr `env:"FLAKESHIP_LISTEN" envDefault:"127.0.0.1:8080"`
	PublicURL       baseURL    `env:"FLAKESHIP_PUBLIC_URL"`
	StateDir        string     `env:"FLAKESHIP_STATE_DIR"`
	SystemdStateDir string     `env:"STATE_DIRECTORY"` // set by systemd's StateDirectory=
	AdminToken      Secret     `env:"FLAKESHIP_ADMIN_TOKEN"`
	AdminTokenFile  secretFile `env:"FLAKESHIP_ADMIN_TOKEN_FILE"`
	ReadToken       Secret     `env:"FLAKESHIP_READ_TOKEN"`
	ReadTokenFile   secretFile `env:"FLAKESHIP_READ_TOKEN_FILE"`
	MaxParallel     int        `env:"FLAKESHIP_MAX_PARALLEL" envDefault:"1" min:"1" max:"64" want:"a whole number from 1 to 64"`
	Nix             program    `env:"FLAKESHIP_NIX" envDefault:"nix"`
	NixFlags        shellWords `env:"FLAKESHIP_NIX_FLAGS"`
	NixTokens       Secret     `env:"FLAKESHIP_NIX_ACCESS_TOKENS"`
	NixTokensFile   secretFile `env:"FLAKESHIP_NIX_ACCESS_TOKENS_FILE"`
	LogLevel        logLevel   `env:"FLAKESHIP_LOG_LEVEL" envDefault:"info" want:"debug, info, warn or error"`
	LogFormat       logFormat  `env:"FLAKESHIP_LOG_FORMAT" envDefault:"text" want:"text or json"`
	BodyLimit       int        `env:"FLAKESHIP_BODY_LIMIT" envDefault:"26214400" min:"1" max:"1073741824" want:"a number of bytes from 1 to 1073741824"`
	TrustedProxies  networks   `env:"FLAKESHIP_TRUSTED_PROXIES"`
	KeepDeploys     int        `env:"FLAKESHIP_KEEP_DEPLOYS" envDefault:"100" min:"0" max:"1000000" want:"a whole number of deploys from 0 to 1000000"`
	KeepFor         days       `env:"FLAKESHIP_KEEP_FOR" envDefault:"30d" min:"720h" max:"876000h" want:"days like 90d or a duration like 2160h, from 30d (delivery ids must outlive the forges' redelivery windows) to 36500d"`
	LogLimit        int64      `env:"FLAKESHIP_DEPLOY_LOG_LIMIT" envDefault:"16777216" min:"1" max:"1099511627776" want:"a number of bytes from 1 to 1099511627776"`
	Targets         targetList `env:"FLAKESHIP_TARGETS,notEmpty" help:"a comma-separated list of target names"`
}

// targetEnv holds one target's variables, read with the prefix
// FLAKESHIP_TARGET_<NAME>_, in the order they are checked (DESIGN.md's table).
type targetEnv struct {
	Forge             forge.Kind    `env:"FORGE,notEmpty" want:"github, forgejo or gitea"`
	Repo              repoName      `env:"REPO,notEmpty" help:"owner/name of the repository"`
	ForgeURL          baseURL       `env:"FORGE_URL"`
	CloneURL          cloneURL      `env:"CLONE_URL"`
	Branch            branch        `env:"BRANCH" envDefault:"main"`
	Attr              attrPath      `env:"ATTR"`
	Activate          Activation    `env:"ACTIVATE" envDefault:"service" want:"service, nixos or none"`
	NixOSAction       NixOSAction   `env:"NIXOS_ACTION" want:"switch, test or boot"`
	Unit              unitName      `env:"UNIT"`
	SystemdScope      Scope         `env:"SYSTEMD_SCOPE" envDefault:"system" want:"system or user"`
	Profile           absPath       `env:"PROFILE"`
	HealthURL         healthURL     `env:"HEALTH_URL"`
	HealthTimeout     time.Duration `env:"HEALTH_TIMEOUT" envDefault:"30s" min:"1ns" want:"a positive duration like 30s, 5m or 1h30m"`
	BuildTimeout      time.Duration `env:"BUILD_TIMEOUT" envDefault:"30m" min:"1ns" want:"a positive duration like 30s, 5m or 1h30m"`
	WebhookSecret     Secret        `env:"WEBHOOK_SECRET"`
	WebhookSecretFile secretFile    `env:"WEBHOOK_SECRET_FILE"`
	Token             Secret        `env:"TOKEN"`
	TokenFile         secretFile    `env:"TOKEN_FILE"`
	StatusContext     statusContext `env:"STATUS_CONTEXT"`
}

// parsers are env's parsers for the exported enumerations of config and
// forge, which have no UnmarshalText (values.go has the types that do).
// Their errors are replaced by the field's want tag. A new map each time: env adds its own
// parsers to the map it is given.
func parsers() map[reflect.Type]env.ParserFunc {
	return map[reflect.Type]env.ParserFunc{
		// forge.ParseKind is the one place that reads gitea as forgejo.
		reflect.TypeFor[forge.Kind]():  func(s string) (any, error) { return forge.ParseKind(strings.ToLower(s)) },
		reflect.TypeFor[Activation]():  oneOf(ActivateService, ActivateNixOS, ActivateNone),
		reflect.TypeFor[NixOSAction](): oneOf(NixOSSwitch, NixOSTest, NixOSBoot),
		reflect.TypeFor[Scope]():       oneOf(ScopeSystem, ScopeUser),
	}
}

// oneOf parses one of values, in any case.
func oneOf[T ~string](values ...T) env.ParserFunc {
	return func(s string) (any, error) {
		if v := T(strings.ToLower(s)); slices.Contains(values, v) {
			return v, nil
		}
		return nil, errInvalid
	}
}

var (
	// errInvalid is a value's problem when its field's want tag says it.
	errInvalid = errors.New("invalid value")
	// errRequired is a value that counts as missing (a blank list).
	errRequired = errors.New("required")
)

// vars is one env struct (globalEnv or targetEnv) as read from an
// environment: it names the variables behind its fields, so names are
// written only in the struct tags, and holds the problems env and the
// bounds found, in field order, for Load to report in turn.
type vars struct {
	prefix   string // "" for globals, FLAKESHIP_TARGET_<NAME>_ for a target
	s        any    // pointer to the struct
	environ  map[string]string
	problems []problem // in field order, at most one per field
}

type problem struct {
	field int
	err   *Error
}

// read fills the struct s points to from environ, each variable's name
// prefixed. A problem with a value is not an error of read: it is kept in
// the vars, for upTo and first.
func read(s any, prefix string, environ map[string]string) (*vars, error) {
	v := &vars{prefix: prefix, s: s, environ: environ}
	byField := map[int]*Error{}
	if err := env.ParseWithOptions(s, env.Options{Environment: environ, Prefix: prefix, FuncMap: parsers()}); err != nil {
		var agg env.AggregateError
		if !errors.As(err, &agg) {
			return nil, fmt.Errorf("read %T: %w", s, err)
		}
		for _, err := range agg.Errors {
			i, p, ok := v.translate(err)
			if !ok {
				return nil, fmt.Errorf("read %T: %w", s, err)
			}
			if _, dup := byField[i]; !dup {
				byField[i] = p
			}
		}
	}
	for i := range v.structValue().NumField() {
		p, ok := byField[i]
		if !ok {
			p = v.outOfBounds(i)
		}
		if p != nil {
			v.problems = append(v.problems, problem{i, p})
		}
	}
	return v, nil
}

// translate turns one of env's errors into the problem of its field.
func (v *vars) translate(err error) (int, *Error, bool) {
	var parseErr env.ParseError
	var emptyErr env.EmptyEnvVarError
	switch {
	case errors.As(err, &parseErr):
		f, ok := v.structValue().Type().FieldByName(parseErr.Name)
		if !ok {
			return 0, nil, false
		}
		return f.Index[0], v.describe(f.Index[0], parseErr.Err), true
	case errors.As(err, &emptyErr):
		for i := range v.structValue().NumField() {
			if v.nameOf(i) == emptyErr.Key {
				return i, v.describe(i, errRequired), true
			}
		}
	}
	return 0, nil, false
}

// describe is the problem err of the value of field i, in words.
func (v *vars) describe(i int, err error) *Error {
	tag := v.structValue().Type().Field(i).Tag
	if errors.Is(err, errRequired) {
		help := tag.Get("help")
		if help == "" {
			help = tag.Get("want")
		}
		return &Error{Var: v.nameOf(i), Problem: "required: " + help}
	}
	if want := tag.Get("want"); want != "" {
		return &Error{Var: v.nameOf(i), Problem: fmt.Sprintf("want %s, got %q", want, clip(v.raw(i)))}
	}
	return &Error{Var: v.nameOf(i), Problem: err.Error()}
}

// outOfBounds checks field i, a number or duration env has converted,
// against its min and max tags.
func (v *vars) outOfBounds(i int) *Error {
	tag := v.structValue().Type().Field(i).Tag
	lo, hasLo := tag.Lookup("min")
	hi, hasHi := tag.Lookup("max")
	if !hasLo && !hasHi {
		return nil
	}
	n := v.structValue().Field(i).Int()
	if (hasLo && n < bound(lo)) || (hasHi && n > bound(hi)) {
		return v.describe(i, errInvalid)
	}
	return nil
}

// bound reads a min or max tag: an integer or a Go duration. The tags are
// constants of this package, so a bad one is a bug.
func bound(s string) int64 {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		panic(fmt.Sprintf("config: bad bound %q", s))
	}
	return int64(d)
}

// upTo returns the first problem of a field up to and including the one
// field points to (a pointer to a field of the struct), or nil. Load calls
// it before it reads field, so problems are reported in field order.
func (v *vars) upTo(field any) error {
	if len(v.problems) > 0 && v.problems[0].field <= v.index(field) {
		return v.problems[0].err
	}
	return nil
}

// first returns the first problem of any field, or nil.
func (v *vars) first() error {
	if len(v.problems) > 0 {
		return v.problems[0].err
	}
	return nil
}

// set reports whether the variable of field was given a value.
func (v *vars) set(field any) bool { return v.environ[v.name(field)] != "" }

// raw is the value of field i's variable as given, or its default.
func (v *vars) raw(i int) string {
	if s := v.environ[v.nameOf(i)]; s != "" {
		return s
	}
	return v.structValue().Type().Field(i).Tag.Get("envDefault")
}

// name returns the variable read into field, a pointer to a field of v.s.
func (v *vars) name(field any) string { return v.nameOf(v.index(field)) }

func (v *vars) nameOf(i int) string {
	name, _, _ := strings.Cut(v.structValue().Type().Field(i).Tag.Get("env"), ",")
	return v.prefix + name
}

func (v *vars) index(field any) int {
	sv := v.structValue()
	for i := range sv.NumField() {
		if sv.Field(i).Addr().Interface() == field {
			return i
		}
	}
	panic(fmt.Sprintf("config: %T is not a field of %T", field, v.s))
}

func (v *vars) structValue() reflect.Value { return reflect.ValueOf(v.s).Elem() }

func (v *vars) errorf(field any, format string, args ...any) *Error {
	return &Error{Var: v.name(field), Problem: fmt.Sprintf(format, args...)}
}

func (v *vars) err(field any, err error) *Error {
	return &Error{Var: v.name(field), Problem: err.Error()}
}

// fill sets field (a pointer to a field of v.s) to the default value def,
// checked as a given value would be: a problem names the field's variable.
func (v *vars) fill(field interface{ UnmarshalText([]byte) error }, def string) error {
	if err := field.UnmarshalText([]byte(def)); err != nil {
		return v.err(field, err)
	}
	return nil
}

// secret is the secret given in value, or read from the file named by file
// (see secretFile), and the field it came from: at most one may be set.
func (v *vars) secret(value *Secret, file *secretFile) (Secret, any, error) {
	if err := v.upTo(value); err != nil {
		return "", nil, err
	}
	if *value != "" && v.set(file) {
		return "", nil, v.errorf(value, "set either %s or %s, not both", v.name(value), v.name(file))
	}
	if err := v.upTo(file); err != nil {
		return "", nil, err
	}
	if v.set(file) {
		return Secret(*file), file, nil
	}
	return *value, value, nil
}

// headerSafe refuses a token that cannot be sent in an HTTP header; from is
// the field it came from.
func (v *vars) headerSafe(s Secret, from any) error {
	if hasControl(s.Reveal()) {
		return v.errorf(from, "the token contains a control character (not shown)")
	}
	return nil
}

// tagNames lists the variable names (without prefix) that env reads into
// the struct s points to.
func tagNames(s any) ([]string, error) {
	params, err := env.GetFieldParamsWithOptions(s, env.Options{Environment: map[string]string{}})
	if err != nil {
		return nil, fmt.Errorf("list variables: %w", err)
	}
	names := make([]string, len(params))
	for i, p := range params {
		names[i] = p.OwnKey
	}
	return names, nil
}
