package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/identity"
)

// newAgentCredentialCmd issues one host's credential, derived from the
// cluster secret (package identity): the agent's (--token-file of
// chime-agent) or, with --daemon-side, the one the daemon presents to that
// agent (its --daemon-credential-file). Each is bound to the host's name,
// so a host holding its own learns nothing of another's.
func newAgentCredentialCmd() *cobra.Command {
	var file, out string
	var daemonSide bool
	c := &cobra.Command{
		Use:   "agent-credential HOST",
		Short: "Print (or write with --out, mode 0600) a host's agent credential, derived from the cluster secret",
		Long: `Print a host's agent credential, derived from controller.agent_secret_file:
the file chime-agent reads with --token-file. With --daemon-side, print the
credential the daemon presents to that host's agent (chime-agent
--daemon-credential-file). A host not in the configuration is refused.
Secrets never go to argv: the credential goes to stdout or to --out.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(file)
			if err != nil {
				return err
			}
			host := args[0]
			if _, ok := cfg.Host(host); !ok {
				return usageErr(fmt.Errorf("host %q is not in %s: a credential is issued only for a configured host", host, file))
			}
			ring, err := api.ReadAgentSecrets(cfg.Controller)
			if err != nil {
				return usageErr(err)
			}
			cred := identity.AgentCredential(ring.Secrets()[0], host)
			if daemonSide {
				cred = ring.DaemonCredential(host)
			}
			if out == "" {
				_, err := fmt.Fprintln(cmd.OutOrStdout(), cred)
				return err
			}
			return writeSecretFile(out, cred)
		},
	}
	c.Flags().StringVarP(&file, "config", "c", defaultConfig(), "configuration file (controller.agent_secret_file)")
	c.Flags().StringVar(&out, "out", "", "write the credential to this file (mode 0600, replaced atomically) instead of stdout")
	c.Flags().BoolVar(&daemonSide, "daemon-side", false, "the daemon→agent credential (chime-agent --daemon-credential-file), not the agent's own")
	return c
}

// writeSecretFile writes v to path with mode 0600 through a temporary file
// in the same directory, so a reader never sees a partial credential.
func writeSecretFile(path, v string) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), ".credential-*")
	if err != nil {
		return fmt.Errorf("--out %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(0o600); err == nil {
		_, err = io.WriteString(f, v+"\n")
	}
	err = errors.Join(err, f.Close())
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("--out %s: %w", path, err)
	}
	return nil
}
