// Screenshots of what a finished run shows: its page in the Prefect UI (artifacts, then logs) and its
// model version in the MLflow UI (model card and lineage tags).
// Usage: node screens.mjs <prefect-ui-url> <flow-run-id> <mlflow-url> <model-name> <version> <screenshot-dir>
import { launch } from './chromium.mjs';

const [ui, flowRun, mlflow, model, version, shots] = process.argv.slice(2);
const browser = await launch();
const seen = {};
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.setDefaultTimeout(60000);

  await page.goto(`${ui}/runs/flow-run/${flowRun}`);
  await page.getByRole('tab', { name: 'Artifacts' }).or(page.getByText('Artifacts', { exact: true })).first().click();
  await page.getByText('transfer-metrics').first().waitFor();
  seen.artifacts = await page.locator('body').innerText();
  await page.screenshot({ path: `${shots}/prefect-flow-run.png` });

  await page.getByRole('tab', { name: 'Logs' }).or(page.getByText('Logs', { exact: true })).first().click();
  const epoch = page.getByText(/epoch \d+\/\d+: train_loss/).first();
  await epoch.waitFor();
  await epoch.scrollIntoViewIfNeeded();
  seen.logs = await page.locator('body').innerText();
  await page.screenshot({ path: `${shots}/prefect-flow-run-logs.png` });

  await page.goto(`${mlflow}/#/models/${model}/versions/${version}`);
  await page.getByText('adaptflow.data_version').first().waitFor();
  await page.getByText('Made from').first().waitFor();
  seen.model_version = await page.locator('body').innerText();
  await page.screenshot({ path: `${shots}/mlflow-model-version.png` });
  await page.getByText('adaptflow.data_version').first().scrollIntoViewIfNeeded();
  await page.screenshot({ path: `${shots}/mlflow-model-version-lineage.png` });
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}
