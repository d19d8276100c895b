package testenv

import "testing"

func TestRequiredReadsWholeEntriesAndAll(t *testing.T) {
	tests := []struct {
		env  string
		want bool
	}{
		{"systemd", true},
		{"all", true},
		{"git,systemd", true},
		{"git, systemd ,nix", true},
		{"systemd-x", false},
		{"x-systemd,git", false},
		{"git,nix", false},
		{"", false},
	}
	for _, tc := range tests {
		t.Setenv("FLAKESHIP_TEST_REQUIRE", tc.env)
		if got := Required("systemd"); got != tc.want {
			t.Errorf("FLAKESHIP_TEST_REQUIRE=%q: Required(systemd) = %v, want %v", tc.env, got, tc.want)
		}
	}
}
