"""The sensitivity taxonomy: stable label ids shared by the classifier, policies and audit records.

Label ids are part of the audit record schema and of every policy file, so they never change
meaning; new labels may be added. Deployer dictionaries add labels named ``custom.<name>``.
"""

LABELS: dict[str, str] = {
    "pii.email": "Email address",
    "pii.phone": "Telephone number",
    "pii.us_ssn": "US Social Security number",
    "pii.ip_address": "IPv4 or IPv6 address",
    "pii.iban": "International bank account number",
    "pii.date_of_birth": "Date of birth (date with birth context)",
    "pci.card_number": "Payment card number (Luhn-valid)",
    "phi.us_npi": "US National Provider Identifier (Luhn-valid)",
    "phi.mrn": "Medical record number (with context)",
    "secret.aws_access_key": "AWS access key id",
    "secret.github_token": "GitHub token",
    "secret.private_key": "PEM private key",
    "secret.jwt": "JSON Web Token",
    "secret.slack_token": "Slack token",
    "secret.stripe_key": "Stripe live key",
    "secret.openai_key": "OpenAI API key",
    "secret.anthropic_key": "Anthropic API key",
    "secret.generic": "Generic secret assignment (keyword + entropy), a credential after Bearer/Basic, or a .netrc/.pgpass entry",
    "secret.url_password": "Password in a URL's userinfo (scheme://user:password@host)",
    "secret.google_api_key": "Google API key (AIza...)",
    "secret.gitlab_token": "GitLab token (glpat-, gldt-, glrt-...)",
    "secret.npm_token": "npm access token (npm_...)",
    "secret.pypi_token": "PyPI API token (pypi-AgEIcHlwaS5vcmc...)",
    "secret.huggingface_token": "Hugging Face token (hf_..., api_org_...)",
    "secret.sendgrid_key": "SendGrid API key (SG.x.y)",
    "secret.shopify_token": "Shopify access token or shared secret (shpat_, shpca_, shppa_, shpss_)",
    "secret.databricks_token": "Databricks personal access token (dapi...)",
    "secret.digitalocean_token": "DigitalOcean token (dop_v1_, doo_v1_, dor_v1_)",
    "secret.mailgun_key": "Mailgun API key",
    "secret.atlassian_token": "Atlassian API token (ATATT3...)",
    "secret.twilio_key": "Twilio API key SID or auth token",
    "secret.azure_key": "Azure storage account key, SharedAccessKey or SAS signature",
}

# Content that reaches the provider but cannot be inspected as text (binary attachments, files
# and URLs the provider fetches itself): never skipped silently, labelled so policy can decide.
CONTENT_LABELS: dict[str, str] = {
    "content.unscanned.image": "Image attachment (not inspected)",
    "content.unscanned.audio": "Audio attachment (not inspected)",
    "content.unscanned.video": "Video attachment (not inspected)",
    "content.unscanned.pdf": "PDF attachment (not inspected)",
    "content.unscanned.document": "Office document attachment (not inspected)",
    "content.unscanned.binary": "Other binary attachment (not inspected)",
    "content.unscanned.remote": "Content the provider fetches from a URL (not inspected)",
    "content.unscanned.file_ref": "A file uploaded earlier, referenced by id (not inspected)",
}

CUSTOM_PREFIX = "custom."


def is_known_label(label: str, custom_names: frozenset[str] | set[str] = frozenset()) -> bool:
    """True for a built-in label or for ``custom.<name>`` where name is a declared dictionary."""
    if label in LABELS or label in CONTENT_LABELS:
        return True
    return label.startswith(CUSTOM_PREFIX) and label[len(CUSTOM_PREFIX):] in custom_names
