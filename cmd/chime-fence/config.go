package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/chimestack/chime-fence/alert"
	"github.com/chimestack/chime-fence/configs"
)

func newConfigCmd() *cobra.Command {
	c := &cobra.Command{Use: "config", Short: "Check and show a configuration"}
	c.AddCommand(newConfigValidateCmd(), newConfigShowCmd())
	return c
}

// loadConfig turns every configuration problem into a usage exit. The
// webhook filters are checked against the event types here (configs does
// not know them): a misspelt one would silence its webhook.
func loadConfig(path string) (*configs.Config, error) {
	cfg, err := configs.Load(path)
	if err != nil {
		return nil, usageErr(err)
	}
	var errs []error
	for i, w := range cfg.Alerts.Webhooks {
		for j, p := range w.Events {
			if err := alert.CheckPattern(p); err != nil {
				errs = append(errs, fmt.Errorf("alerts.webhooks[%d].events[%d]: %w", i, j, err))
			}
		}
	}
	if len(errs) > 0 {
		return nil, usageErr(fmt.Errorf("%s: %w", path, errors.Join(errs...)))
	}
	return cfg, nil
}

func newConfigValidateCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE",
		Short: "Check a configuration; exit 0 if valid, 2 listing every problem if not",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(args[0])
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: valid (cluster %s, %d racks, %d hosts, mode %s)\n",
				args[0], cfg.Cluster.Name, len(cfg.Racks), len(cfg.Hosts), cfg.Mode)
			return err
		},
	}
}

func newConfigShowCmd() *cobra.Command {
	var file, host, output string
	c := &cobra.Command{
		Use:   "show",
		Short: "Print the effective configuration, or one host's effective policy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "yaml" && output != "json" {
				return usageErr(fmt.Errorf("--output %q: must be yaml or json", output))
			}
			cfg, err := loadConfig(file)
			if err != nil {
				return err
			}
			var view any = configs.Redacted(cfg)
			if host != "" {
				h, ok := cfg.Host(host)
				if !ok {
					return usageErr(fmt.Errorf("no host %q in %s (hosts: %v)", host, file, cfg.HostNames()))
				}
				view = configs.HostView(cfg, h)
			}
			return render(cmd.OutOrStdout(), output, view)
		},
	}
	c.Flags().StringVarP(&file, "config", "c", defaultConfig(), "configuration file")
	c.Flags().StringVar(&host, "host", "", "show this host's effective policy")
	c.Flags().StringVarP(&output, "output", "o", "yaml", "yaml or json")
	return c
}

// render writes v as YAML or JSON. JSON goes through YAML first so
// durations print as "15s" in both, never as nanoseconds.
func render(w io.Writer, format string, v any) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return failureErr(err)
	}
	if format == "yaml" {
		_, err = w.Write(b)
		return err
	}
	var generic any
	if err := yaml.Unmarshal(b, &generic); err != nil {
		return failureErr(err)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(generic); err != nil {
		return failureErr(errors.Join(errors.New("render json"), err))
	}
	return nil
}
