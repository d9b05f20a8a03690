//! The built-in credential rules: one regex per format, the literal keywords that must occur
//! near a match (the prefilter), and the check a match must pass.
//!
//! Patterns are compiled together into one automaton with Unicode off (ASCII classes, byte
//! matching), so `\b`, `\s` and `(?i)` are ASCII-only. A pattern with a `secret` capture group
//! redacts only that group (the assignment's value, the URL's password); otherwise the whole
//! match. Distinctive prefixes (`ghp_`, `AKIA`, `eyJ`, …) have no leading `\b`, so a token right
//! after a JSON escape (`\nghp_…`) still matches. Order matters where two rules match at the same position: the earlier one wins.

/// A value check applied after a pattern matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// The format is specific enough on its own.
    None,
    /// `name = value` style: reject placeholders, code references and identifiers.
    Assignment { min_len: usize },
    /// The value must mix letters and digits (bearer tokens, basic auth, URL passwords).
    Mixed,
    /// URL password: reject obvious placeholders only.
    UrlPassword,
}

/// One credential format.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rule {
    pub(crate) kind: &'static str,
    pub(crate) pattern: &'static str,
    /// Literals at least one of which occurs in, or right before, every match. Matched without
    /// regard to ASCII case unless `case_sensitive`.
    pub(crate) keywords: &'static [&'static str],
    pub(crate) case_sensitive: bool,
    pub(crate) check: Check,
}

const fn r(
    kind: &'static str,
    pattern: &'static str,
    keywords: &'static [&'static str],
    case_sensitive: bool,
    check: Check,
) -> Rule {
    Rule {
        kind,
        pattern,
        keywords,
        case_sensitive,
        check,
    }
}

// `name = value` shapes: `NAME=v`, `name: v`, `"name": "v"`, `name := v`, `name => 'v'`, and the
// same with JSON-escaped quotes inside tool-call arguments (`name = \"v\"`).
macro_rules! assign {
    ($names:literal, $min:literal) => {
        concat!(
            "(?i)(?:",
            $names,
            r#")[a-z0-9_.\-]{0,24}(?:\\?["'])?[ \t]{0,3}(?:=|:=|:|=>|\?=)[ \t]{0,3}(?:\\?["'`])?(?P<secret>[^\s"'`\\,;()\[\]{}<>]{"#,
            $min,
            ",400})"
        )
    };
}

use Check::{Assignment, Mixed, UrlPassword};

/// Every built-in rule, most specific first.
pub(crate) const RULES: &[Rule] = &[
    // Private keys, multi-line (also JSON-escaped `\n` inside service-account JSON and tool
    // arguments). A block without its END line is redacted to the end of its base64 body.
    r(
        "private_key",
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?s:.)*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----",
        &["-----BEGIN"],
        true,
        Check::None,
    ),
    r(
        "private_key",
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?:[A-Za-z0-9+/=\s:,\-]|\\n|\\r)*",
        &["-----BEGIN"],
        true,
        Check::None,
    ),
    // Cloud.
    r(
        "aws_access_key_id",
        r"(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b",
        &["AKIA", "ASIA", "ABIA", "ACCA", "A3T"],
        true,
        Check::None,
    ),
    r(
        "aws_secret_access_key",
        r#"(?i)(?:aws_?secret_?(?:access_?)?key|secretaccesskey|aws_secret)(?:\\?["'])?[ \t]{0,3}(?:=|:|=>)[ \t]{0,3}(?:\\?["'])?(?P<secret>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
        &["secret"],
        false,
        Check::None,
    ),
    r(
        "gcp_api_key",
        r"AIza[0-9A-Za-z_\-]{35}",
        &["AIza"],
        true,
        Check::None,
    ),
    r(
        "google_oauth_client_secret",
        r"GOCSPX-[A-Za-z0-9_\-]{28}",
        &["GOCSPX-"],
        true,
        Check::None,
    ),
    r(
        "google_oauth_token",
        r"ya29\.[A-Za-z0-9_\-]{20,}",
        &["ya29."],
        true,
        Check::None,
    ),
    r(
        "google_refresh_token",
        r"\b1//0[A-Za-z0-9_\-]{40,}",
        &["1//0"],
        true,
        Check::None,
    ),
    r(
        "azure_storage_key",
        r"(?i)AccountKey=(?P<secret>[A-Za-z0-9+/]{80,100}={0,2})",
        &["accountkey="],
        false,
        Check::None,
    ),
    r(
        "azure_sas_signature",
        r"(?i)[?&]sig=(?P<secret>[A-Za-z0-9%+/]{30,}(?:%3D|=){0,2})",
        &["sig="],
        false,
        Check::None,
    ),
    r(
        "azure_client_secret",
        r"\b[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.\-]{31,34}",
        &["Q~"],
        true,
        Check::None,
    ),
    r(
        "digitalocean_token",
        r"do[por]_v1_[a-f0-9]{64}\b",
        &["dop_v1_", "doo_v1_", "dor_v1_"],
        false,
        Check::None,
    ),
    r(
        "heroku_api_key",
        r#"(?i)heroku[a-z_\-]{0,20}(?:\\?["'])?[ \t]{0,3}[:=][ \t]{0,3}(?:\\?["'])?(?P<secret>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"#,
        &["heroku"],
        false,
        Check::None,
    ),
    // Version control.
    r(
        "github_pat",
        r"ghp_[A-Za-z0-9]{36,255}\b",
        &["ghp_"],
        true,
        Check::None,
    ),
    r(
        "github_oauth",
        r"gho_[A-Za-z0-9]{36,255}\b",
        &["gho_"],
        true,
        Check::None,
    ),
    r(
        "github_app_token",
        r"gh[usr]_[A-Za-z0-9]{36,255}\b",
        &["ghu_", "ghs_", "ghr_"],
        true,
        Check::None,
    ),
    r(
        "github_fine_grained_pat",
        r"github_pat_[A-Za-z0-9_]{50,255}",
        &["github_pat_"],
        true,
        Check::None,
    ),
    r(
        "gitlab_token",
        r"gl(?:pat|dt|rt|ptt|soat|ft|imt|agent|oas|cbt)-[A-Za-z0-9_\-]{20,}",
        &[
            "glpat-", "gldt-", "glrt-", "glptt-", "glsoat-", "glft-", "glimt-", "glagent-",
            "gloas-", "glcbt-",
        ],
        true,
        Check::None,
    ),
    // Chat, payments, SaaS.
    r(
        "slack_token",
        r"xox[abposr]-[A-Za-z0-9\-]{10,250}",
        &["xoxb-", "xoxp-", "xoxa-", "xoxo-", "xoxs-", "xoxr-"],
        true,
        Check::None,
    ),
    r(
        "slack_app_token",
        r"xapp-[0-9]-[A-Z0-9]+-[0-9]+-[a-f0-9]+",
        &["xapp-"],
        true,
        Check::None,
    ),
    r(
        "slack_webhook",
        r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_\-]{20,}",
        &["hooks.slack.com"],
        false,
        Check::None,
    ),
    r(
        "discord_webhook",
        r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/[0-9]+/[A-Za-z0-9_\-]{60,}",
        &["/api/webhooks/"],
        false,
        Check::None,
    ),
    r(
        "telegram_bot_token",
        r"\b[0-9]{8,10}:AA[A-Za-z0-9_\-]{33}\b",
        &[":AA"],
        true,
        Check::None,
    ),
    r(
        "stripe_key",
        r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,247}\b",
        &["sk_live_", "sk_test_", "rk_live_", "rk_test_"],
        true,
        Check::None,
    ),
    r(
        "stripe_webhook_secret",
        r"whsec_[A-Za-z0-9+/=]{32,}",
        &["whsec_"],
        true,
        Check::None,
    ),
    r(
        "square_token",
        r"sq0(?:atp|csp)-[A-Za-z0-9_\-]{22,60}",
        &["sq0atp-", "sq0csp-"],
        true,
        Check::None,
    ),
    r(
        "shopify_token",
        r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b",
        &["shpat_", "shpca_", "shppa_", "shpss_"],
        true,
        Check::None,
    ),
    r(
        "twilio_api_key",
        r"\bSK[0-9a-fA-F]{32}\b",
        &["SK"],
        true,
        Check::None,
    ),
    r(
        "sendgrid_api_key",
        r"SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}\b",
        &["SG."],
        true,
        Check::None,
    ),
    r(
        "mailgun_api_key",
        r"\bkey-[0-9a-f]{32}\b",
        &["key-"],
        true,
        Check::None,
    ),
    r(
        "mailchimp_api_key",
        r"\b[0-9a-f]{32}-us[0-9]{1,2}\b",
        &["-us"],
        true,
        Check::None,
    ),
    r(
        "npm_token",
        r"npm_[A-Za-z0-9]{36}\b",
        &["npm_"],
        true,
        Check::None,
    ),
    r(
        "npm_auth_token",
        r#"(?i)_authToken[ \t]*=[ \t]*(?P<secret>[^\s"'$\{][^\s"']{9,})"#,
        &["_authtoken"],
        false,
        Check::None,
    ),
    r(
        "pypi_token",
        r"pypi-(?:AgEIcHlwaS5vcmc|AgENdGVzdC5weXBpLm9yZw)[A-Za-z0-9_\-]{50,}",
        &["pypi-AgEIcHlwaS5vcmc", "pypi-AgENdGVzdC5weXBpLm9yZw"],
        true,
        Check::None,
    ),
    r(
        "databricks_token",
        r"\bdapi[a-f0-9]{32}(?:-[0-9])?\b",
        &["dapi"],
        true,
        Check::None,
    ),
    r(
        "vault_token",
        r"hv[sb]\.[A-Za-z0-9_\-]{24,}",
        &["hvs.", "hvb."],
        true,
        Check::None,
    ),
    r(
        "doppler_token",
        r"\bdp\.(?:pt|st|ct|sa|scim|audit)\.[A-Za-z0-9]{40,44}\b",
        &["dp."],
        true,
        Check::None,
    ),
    r(
        "pulumi_token",
        r"\bpul-[a-f0-9]{40}\b",
        &["pul-"],
        true,
        Check::None,
    ),
    r(
        "grafana_token",
        r"(?:glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}|glc_[A-Za-z0-9+/]{32,400}={0,2})",
        &["glsa_", "glc_"],
        true,
        Check::None,
    ),
    r(
        "newrelic_key",
        r"NR(?:AK|II|JS)-[A-Za-z0-9]{27,32}\b",
        &["NRAK-", "NRII-", "NRJS-"],
        true,
        Check::None,
    ),
    r(
        "linear_api_key",
        r"lin_api_[A-Za-z0-9]{40}\b",
        &["lin_api_"],
        true,
        Check::None,
    ),
    r(
        "atlassian_token",
        r"ATATT3[A-Za-z0-9_\-=]{150,}",
        &["ATATT3"],
        true,
        Check::None,
    ),
    r(
        "sentry_dsn",
        r"https://(?P<secret>[a-f0-9]{32})@[a-z0-9.\-]+\.ingest\.(?:[a-z]{2}\.)?sentry\.io",
        &["ingest"],
        false,
        Check::None,
    ),
    r(
        "sentry_token",
        r"sntry[su]_[A-Za-z0-9+/=_]{60,}",
        &["sntrys_", "sntryu_"],
        true,
        Check::None,
    ),
    r(
        "age_secret_key",
        r"AGE-SECRET-KEY-1[0-9A-Z]{58}\b",
        &["AGE-SECRET-KEY-1"],
        true,
        Check::None,
    ),
    r(
        "datadog_api_key",
        r#"(?i)(?:dd|datadog)_?(?:api|app)_?key(?:\\?["'])?[ \t]{0,3}(?:=|:|=>)[ \t]{0,3}(?:\\?["'])?(?P<secret>[a-f0-9]{32,40})\b"#,
        &["dd_api", "ddapi", "dd_app", "ddapp", "datadog"],
        false,
        Check::None,
    ),
    // LLM providers.
    r(
        "openai_api_key",
        r"sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{16,}T3BlbkFJ[A-Za-z0-9_\-]{16,}",
        &["T3BlbkFJ"],
        true,
        Check::None,
    ),
    r(
        "openai_api_key",
        r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,}",
        &["sk-proj-", "sk-svcacct-", "sk-admin-"],
        true,
        Check::None,
    ),
    r(
        "anthropic_api_key",
        r"sk-ant-[A-Za-z0-9_\-]{32,}",
        &["sk-ant-"],
        true,
        Check::None,
    ),
    r(
        "openrouter_api_key",
        r"sk-or-v1-[a-f0-9]{64}\b",
        &["sk-or-"],
        true,
        Check::None,
    ),
    r(
        "huggingface_token",
        r"\b(?:hf_[A-Za-z0-9]{34,40}|api_org_[A-Za-z0-9]{34})\b",
        &["hf_", "api_org_"],
        true,
        Check::None,
    ),
    r(
        "groq_api_key",
        r"gsk_[A-Za-z0-9]{48,56}\b",
        &["gsk_"],
        true,
        Check::None,
    ),
    r(
        "xai_api_key",
        r"xai-[A-Za-z0-9]{70,90}\b",
        &["xai-"],
        true,
        Check::None,
    ),
    r(
        "perplexity_api_key",
        r"pplx-[A-Za-z0-9]{40,56}\b",
        &["pplx-"],
        true,
        Check::None,
    ),
    r(
        "replicate_api_token",
        r"\br8_[A-Za-z0-9]{37}\b",
        &["r8_"],
        true,
        Check::None,
    ),
    r(
        "sk_api_key",
        r"\bsk-[A-Za-z0-9]{32,}\b",
        &["sk-"],
        true,
        Check::None,
    ),
    // Tokens by shape.
    r(
        "jwt",
        r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
        &["eyJ"],
        true,
        Check::None,
    ),
    // Credentials in URLs and DSNs: `scheme://user:password@host`.
    r(
        "url_password",
        r#"(?i)\b[a-z][a-z0-9+.\-]{1,20}://[^\s:/@"'<>\\]{0,64}:(?P<secret>[^\s:/@"'<>\\$\{][^\s/@"'<>\\]{2,127})@[a-z0-9.\-\[\]_]"#,
        &["://"],
        true,
        UrlPassword,
    ),
    // Headers.
    r(
        "bearer_token",
        r"(?i)\bbearer[ \t]+(?P<secret>[A-Za-z0-9_\-.~+/]{16,}=*)",
        &["bearer"],
        false,
        Mixed,
    ),
    r(
        "basic_auth",
        r#"(?i)authorization(?:\\?["'])?[ \t]{0,3}[:=][ \t]{0,3}(?:\\?["'])?basic[ \t]+(?P<secret>[A-Za-z0-9+/]{8,}={0,2})"#,
        &["authorization"],
        false,
        Check::None,
    ),
    r(
        "docker_auth",
        r#""auth"[ \t]*:[ \t]*"(?P<secret>[A-Za-z0-9+/]{16,}={0,2})""#,
        &["\"auth\""],
        false,
        Check::None,
    ),
    r(
        "cli_secret_flag",
        r#"(?i)--(?:password|passwd|token|api-key|secret|client-secret)[= ](?:["'])?(?P<secret>[^\s"'\-$<{][^\s"']{5,})"#,
        &[
            "--pass",
            "--token",
            "--api-key",
            "--secret",
            "--client-secret",
        ],
        false,
        Assignment { min_len: 6 },
    ),
    // Assignments in code, env files, JSON and YAML.
    r(
        "password_assignment",
        assign!(r"password|passwd|passphrase|\bpwd|\bpass\b", "6"),
        &["pass", "pwd"],
        false,
        Assignment { min_len: 6 },
    ),
    r(
        "secret_assignment",
        assign!("secret", "8"),
        &["secret"],
        false,
        Assignment { min_len: 8 },
    ),
    r(
        "credential_assignment",
        assign!(
            r"api[_\-]?key|apikey|access[_\-]?key|auth[_\-]?token|access[_\-]?token|refresh[_\-]?token|token|private[_\-]?key|credentials?|x-api-key",
            "12"
        ),
        &[
            "api_key",
            "api-key",
            "apikey",
            "access_key",
            "access-key",
            "accesskey",
            "token",
            "private_key",
            "private-key",
            "privatekey",
            "credential",
        ],
        false,
        Assignment { min_len: 12 },
    ),
];
