// Starts a custom run of a deployment from the Prefect UI's form, as a person would:
// Deployments -> <deployment> -> Run -> Custom run -> change one field -> Submit.
// Usage: node custom_run.mjs <ui-url> <deployment> <section> <field> <value> <screenshot-dir>
import { launch } from './chromium.mjs';

const [ui, deployment, section, field, value, shots] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.setDefaultTimeout(60000);
  await page.goto(`${ui}/deployments`);
  await page.getByRole('link', { name: deployment, exact: true }).first().click();
  await page.getByRole('button', { name: 'Run', exact: true }).click();
  await page.getByText('Custom run').click();

  // A form property is the innermost block whose label is "<Name> (Optional)".
  const property = (scope, label) => scope.locator('div.schema-form-property')
    .filter({ has: page.locator('span.schema-form-property__label', { hasText: new RegExp(`^${label} \\(Optional\\)$`) }) })
    .last();
  const input = property(property(page, section), field).locator('input').first();
  const before = await input.inputValue();
  await input.fill(value);
  await input.scrollIntoViewIfNeeded();
  await page.screenshot({ path: `${shots}/prefect-custom-run-form.png` });
  await page.getByRole('button', { name: 'Submit' }).click();
  await page.getByText('1 Flow run').or(page.getByText(/\d+ Flow runs/)).first().waitFor();
  await page.screenshot({ path: `${shots}/prefect-custom-run-submitted.png` });
  console.log(JSON.stringify({ deployment, section, field, before, after: value }));
} finally {
  await browser.close();
}
